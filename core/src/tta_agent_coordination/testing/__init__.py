"""The contract tests every backend must pass (becoming the conformance suite, issue 5).

Each ``*_contract`` module holds test classes parameterised by ``url``: subclass one and set
``url`` to run it against your backend. Importing this package imports nothing heavy.
"""
