"""Remote inference: `pirl serve` (server.py) on the GPU machine, `RemotePolicy` (client.py) on the robot.

Websockets carry msgpack messages with numpy arrays (wire.py); the messages are in protocol.py.
"""
