"""The gRPC services the server serves, named once, from the generated protos' descriptors (a service added to a
.proto is here without an edit)."""

from __future__ import annotations

from google.protobuf.descriptor import ServiceDescriptor
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection

from acg2vec.v1 import image_feature_pb2, search_pb2, tagging_pb2, text_feature_pb2

#: acg2vec's own services, in the order of the API reference: tagging, image and text features, search.
ACG2VEC_SERVICES: tuple[ServiceDescriptor, ...] = tuple(
    service
    for module in (tagging_pb2, image_feature_pb2, text_feature_pb2, search_pb2)
    for service in module.DESCRIPTOR.services_by_name.values()
)
#: Their full names (`acg2vec.v1.TaggingService`, ...), as gRPC health and reflection name them.
ALL_SERVICES: tuple[str, ...] = tuple(service.full_name for service in ACG2VEC_SERVICES)
TAGGING = tagging_pb2.DESCRIPTOR.services_by_name["TaggingService"].full_name
SEARCH = search_pb2.DESCRIPTOR.services_by_name["SearchService"].full_name
HEALTH = health_pb2.DESCRIPTOR.services_by_name["Health"].full_name
#: Every service a server lists through reflection: acg2vec's, health, and reflection itself.
LISTED: frozenset[str] = frozenset({*ALL_SERVICES, HEALTH, reflection.SERVICE_NAME})
