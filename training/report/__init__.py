"""``python -m training report``: run the study, analyse, answer, render and write it.

The top of training: may import every other package.
"""
