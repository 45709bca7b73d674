"""Command-line entry points: parse, call, render. No logic of their own."""
