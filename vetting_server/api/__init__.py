"""The HTTP API: the operator's and the agent's controllers, their guards, bodies and the OpenAPI contract."""
