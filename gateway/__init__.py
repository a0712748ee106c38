"""HTTP intake, settings, configuration, store and command line."""
