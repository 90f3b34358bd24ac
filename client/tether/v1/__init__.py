"""Generated wire types and stubs of the tether.v1 API. Do not edit."""
