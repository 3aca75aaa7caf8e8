"""MLflow conventions of a sweep: experiment per spec, parent run per sweep, child per trial."""
