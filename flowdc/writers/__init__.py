"""Sample writers: imagefolder files and webdataset tar shards, both through a Destination."""
