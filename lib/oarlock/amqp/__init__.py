"""AMQP: the only package that imports pika (a Transport with neutral Incoming/Outgoing types)."""
