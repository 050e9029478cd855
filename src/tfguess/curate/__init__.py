"""Improving the data set: the inbox, which photo to label next, the review page moves, the report."""
