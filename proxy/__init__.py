"""ollama-vllm-proxy: the Ollama REST API served over vLLM's OpenAI-compatible API."""

__version__ = "0.1.0"
