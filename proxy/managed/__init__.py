"""Managed models: the proxy starts, swaps and stops vLLM servers itself, as ``ollama serve``
loads and unloads models. ``process`` is the seam between the scheduler (what runs, when)
and the launcher (how one vLLM process is started, watched and stopped)."""
