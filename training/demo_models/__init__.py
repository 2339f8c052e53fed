"""Training of the demo models shipped in bids_app/demo_models/."""
