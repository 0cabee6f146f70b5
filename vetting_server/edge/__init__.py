"""The fast agent path: the agent's hot routes served below Litestar, with their HTTP protocol."""
