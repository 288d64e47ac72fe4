"""The event bus: durable topics with consumer groups, and ephemeral broadcasts."""

from keelson.bus._base import BatchHandler, BroadcastHandler, Bus, Handler
from keelson.bus._dedupe import MemoryProcessedIds, ProcessedIds, RedisProcessedIds
from keelson.bus._plugin import BUS, BusPlugin, RedisBusPlugin, bus_plugin
from keelson.bus._redis import RedisBus
from keelson.bus._streams import TOPICS_KEY, dead_letter_key, stream_key
from keelson.bus._topics import TopicPattern, validate_topic
from keelson.bus._zmq import ZmqBroker, ZmqBus

__all__ = [
    "BUS",
    "TOPICS_KEY",
    "BatchHandler",
    "BroadcastHandler",
    "Bus",
    "BusPlugin",
    "Handler",
    "MemoryProcessedIds",
    "ProcessedIds",
    "RedisBus",
    "RedisBusPlugin",
    "RedisProcessedIds",
    "TopicPattern",
    "ZmqBroker",
    "ZmqBus",
    "bus_plugin",
    "dead_letter_key",
    "stream_key",
    "validate_topic",
]
