"""Pure translation between the Ollama and OpenAI/vLLM wire shapes.

No I/O, logging, clock or randomness here: ids and times are passed in, and every
function names its direction (``to_openai_*`` / ``to_ollama_*``).
"""
