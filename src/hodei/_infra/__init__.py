"""Internal: the machinery hodei's own suite and benchmarks stand on — a private Podman service, a throw-away
PostgreSQL cluster, the agent's container image, scratch directories and ports. Not a public API; import the
module you need (each is imported lazily, so that ``import hodei`` never pulls in the docker SDK)."""
