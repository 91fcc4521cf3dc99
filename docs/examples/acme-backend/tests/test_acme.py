from tta_agent_coordination.testing.conformance import BackendConformance


class TestAcme(BackendConformance):
    url = "acme://"
