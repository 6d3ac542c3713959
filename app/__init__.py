"""softclip.app"""
