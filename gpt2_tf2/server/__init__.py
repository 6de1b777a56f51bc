"""The OpenAI-compatible HTTP server (`gpt2_tf2 serve`): OpenAI's request and reply shapes
(`protocol`), continuous batching over the decode engine (`scheduler`), text cut at stop
sequences as it streams (`text`), chat messages as a prompt (`chat`), Prometheus metrics
(`metrics`), the Starlette app (`app`) and the playground page (`playground.html`)."""
