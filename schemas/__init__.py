"""The contract between controller and harness: JSON Schemas, typed wire models,
agent naming rules and the unix-socket HTTP client both sides use."""
