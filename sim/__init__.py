"""Simulator side of pirl-robot: environment adapters, scripted experts and demo recording per simulator."""
