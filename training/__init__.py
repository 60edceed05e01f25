"""Training, data, models, attacks and certification built on compiled bound programs."""
