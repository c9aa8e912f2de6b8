"""Cells: each recurrent cell's forward pass, tape, TP rules and parameter directions."""
