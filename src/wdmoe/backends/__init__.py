"""Device pools: where the routed experts run. `local` (in-process) is the embedded default."""
