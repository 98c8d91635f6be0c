"""Broker transports: the contract (base), Kafka, and in-memory."""
