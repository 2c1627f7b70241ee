"""The evaluation program and the generation engine shared with the playground."""
