"""Billing: CPT 77xxx charges from delivered treatment, and claim reconciliation (issue 11).

``services.billing.domain`` holds the pure rules; the app, store and consumer build on it.
"""
