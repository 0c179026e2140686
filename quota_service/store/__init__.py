"""Counter stores: the narrow interface the service needs and its Redis implementation."""
