"""FreeSWITCH 1.10 simulator (ESL server, mod_xml_curl poster, call player). docs/simulator.md."""
from switchd.sim.clock import SimClock
from switchd.sim.json_cdr import CdrSink
from switchd.sim.legs import SimLeg
from switchd.sim.model import GatewayBehaviour, SimCall
from switchd.sim.simulator import Simulator

__all__ = ["CdrSink", "GatewayBehaviour", "SimCall", "SimClock", "SimLeg", "Simulator"]
