"""Safe, recorded access to PostgreSQL, Redis and Kafka. Drivers are imported on first use."""
