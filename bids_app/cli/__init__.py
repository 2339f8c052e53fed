"""Command line: the BIDS-App entry point (`spineseg`) and its helper subcommands."""
