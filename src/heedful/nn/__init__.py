"""Building blocks below the models and tasks that are not attention (losses)."""
