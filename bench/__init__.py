"""Benchmark harness for the proxy: fake vLLM, load client, runner (see README.md)."""
