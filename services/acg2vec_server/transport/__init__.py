"""Everything gRPC: server.py (options, interceptor order, binding), handlers.py (the one handler-wrapping
helper), status.py (domain errors -> gRPC status), auth.py, tls.py, security.py, admission.py, observability.py
(interceptors and their configuration), servicers/ (the four acg2vec.v1 services).

May import the domain, settings and the generated acg2vec.v1 stubs; the domain never imports this.
"""
