"""Internal: the benchmarks behind ``hodei bench`` (registration scenarios, the fleet, containers). Not a public
API."""
