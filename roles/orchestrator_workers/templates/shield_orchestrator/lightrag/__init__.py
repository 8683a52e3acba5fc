"""lightrag"""
