"""What two or more services need: contracts, settings, messaging, Mongo access, observability, errors."""
