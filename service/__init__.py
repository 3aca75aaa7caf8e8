"""Everything about sweeps: specs, the engine on Ray, tracking, reports, the API and the CLI."""
