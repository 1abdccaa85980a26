"""epm_domain: pure aggregates written by more than one service.

The request aggregate is created and expired by request-svc and decided by
approval-svc; both use this one model, and JetStream's expected-sequence
check decides which append wins.
"""
