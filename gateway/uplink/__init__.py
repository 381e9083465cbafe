"""The way to the city centre. `mqtt.py` is the only module that imports aiomqtt."""
