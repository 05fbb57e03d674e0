"""The collector: one connection to the inverter, read-only; frames in, readings out.

- `framer`: split the received byte stream into answers, count what is skipped, decode values.
- `connection`: the TCP connection; `ReadOnlyLink`, the only way bytes reach the inverter, sends READ requests only.
- `scheduler`: the window of requests in flight, timeouts and re-asks, polling tiers.
- `discovery`: the inventory (name first, then identity and what is attached).
- `process`: the collector child process; `oneshot`: `rctmon inventory` and `rctmon read`.
"""
