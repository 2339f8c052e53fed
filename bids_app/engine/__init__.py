"""The segmentation engine: one image in memory in, labelled images on stated grids out."""
