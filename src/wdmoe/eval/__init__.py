"""Accuracy of a (split) model under any policy: held-out perplexity, next-token accuracy, multiple choice."""
