"""The run engine: method contract, profiles, seeding, the training loop, records and tracking."""
