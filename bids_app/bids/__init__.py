"""BIDS layer: input discovery and the derivatives writer; knows nothing of networks."""
