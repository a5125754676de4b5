"""Ground floor above proto: settings, client factories, metrics endpoint, reports, signals."""
