//! AF_XDP sockets (copy mode) that receive the data messages the program steers.
