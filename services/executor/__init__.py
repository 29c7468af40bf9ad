"""The executor: signals in, BingX orders out, each at most once."""
