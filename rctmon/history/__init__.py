"""The inverter's own records: its logger's time series and its event table, read back into rctmon's outputs.

- `series`: the declarative table of logger series (resolution, unit, kind, InfluxDB field) and the event object;
- `timezone`: the inverter's clock (local wall time read as UTC) and true instants;
- `protocol`: the checks every answer passes before anything of it is used;
- `events`: the event types and their decoding;
- `engine`: the pipelined reader (chains of queries, stitched and deduplicated);
- `outputs`: line protocol, OpenMetrics, CSV, and InfluxDB through a spool of its own;
- `summary`: what an import found (points per series, first and last, the inverter's own gaps);
- `command`: `rctmon history`.
"""
