"""Operator commands on the OpenNebula front-end, over pyone: GPU inventory, the GPU SuperNode VM
template and the OneFlow service template. pyone and jinja2 are imported inside functions."""
