"""Result files, summaries, plots, log lines and the staged output path."""
