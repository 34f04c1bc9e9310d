"""Administration: provisioning from files, rate-deck import and the inventory listings
the CLI and the API share."""
